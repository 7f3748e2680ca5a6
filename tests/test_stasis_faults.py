"""The ARI controller under faults: it never records without a committed decision, never
loses a recording it should keep, and keeps serving the other calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from agi.ari import AriClient
from agi.session import SessionDeps
from agi.simpbx import CallerScript, CallResult
from agi.stasis import StasisApp
from callrec.harness import Harness, harness
from flows.errors import StoreFullError
from flows.policy import Decision, Policy
from storage.ports import CallRow, CallStart, DecisionRecord, Ledger, RecordingStatus
from storage.sqlite import SqliteStore

POLICY = replace(Policy(), overload_window=timedelta(hours=3))
SCALE = 0.02
SERVICE = "040 40 40 40"
SALES = "040 40 40 45"
PRESS_1 = CallerScript(keys=((2.0, "1"),), agent_answers_after=2.0, talk_seconds=4.0)


async def call(h: Harness, dialed: str, caller: str, script: CallerScript) -> CallResult:
    placed = await h.sim.place_call(dialed, caller, script)
    return await asyncio.wait_for(placed.done, 30)


async def finished(h: Harness, result: CallResult) -> CallRow:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while h.stasis.is_live(result.channel_id):
        assert loop.time() < deadline, "the controller did not finish the call"
        await asyncio.sleep(0.01)
    call_id = h.stasis.call_id_of(result.channel_id)
    assert call_id is not None
    row = await h.store.get_call(call_id)
    assert row is not None and row.ended_at is not None
    return row


async def stored(h: Harness, call_id: str) -> bool:
    return any(
        r.call_id == call_id and r.status is RecordingStatus.STORED
        for r in await h.store.recordings()
    )


async def test_failed_prompt_goes_on_unrecorded_and_next_call_is_served(tmp_path: Path) -> None:
    """A 500 on the notice's playback (the first request for a call the dialplan answered):
    the call fails closed (no decision, no MixMonitor, still queued to an agent), and the
    next caller is served normally."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.fail_next("POST", "/channels/*/play/*", status=500)
        first = await call(h, SERVICE, "041 555 201", PRESS_1)
        row = await finished(h, first)
        assert row.decision is Decision.NONE
        assert first.recorded_file is None
        assert first.variables.get("CALLREC_RECORD") == "no"
        assert first.answered_by_agent  # refusing, or failing, costs the caller nothing
        second = await call(h, SERVICE, "041 555 202", PRESS_1)
        assert await stored(h, (await finished(h, second)).call_id)


async def test_failed_variable_set_never_records(tmp_path: Path) -> None:
    """A 500 while setting the recording variables: the dialplan never sees yes."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.fail_next("POST", "/channels/*/variable", status=500)
        result = await call(h, SALES, "041 555 203", PRESS_1)
        row = await finished(h, result)
        assert result.recorded_file is None
        assert result.variables.get("CALLREC_RECORD") != "yes"
        assert not await stored(h, row.call_id)


async def test_websocket_drop_mid_prompt_fails_closed(tmp_path: Path) -> None:
    """The events socket drops while the question plays and the key is lost with it: the
    reconnect finds an undecided call, which goes on unrecorded; later calls are recorded."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.drop_websockets_at("ChannelDtmfReceived", deliver=False)
        result = await call(h, SERVICE, "041 555 204", PRESS_1)
        row = await finished(h, result)
        assert row.decision is Decision.NONE
        assert result.recorded_file is None
        assert result.answered_by_agent
        again = await call(h, SERVICE, "041 555 205", PRESS_1)
        assert await stored(h, (await finished(h, again)).call_id)


async def test_websocket_drop_after_continue_still_stores_the_recording(tmp_path: Path) -> None:
    """Events lost after continue (queue variables, ChannelDestroyed): the reconnect finds the
    channel gone, and the recording it made is still ingested, never orphaned."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.drop_websockets_at("StasisEnd", deliver=True)
        result = await call(h, SERVICE, "041 555 206", PRESS_1)
        row = await finished(h, result)
        assert row.decision is Decision.RECORD
        assert result.recorded_file is not None
        assert await stored(h, row.call_id)
        assert not Path(result.recorded_file).exists(), "moved out of the spool"


def _crash(h: Harness) -> None:
    """The controller's tasks vanish without a shutdown, as in a kill -9."""
    for task in asyncio.all_tasks():
        name = task.get_coro().__qualname__  # type: ignore[union-attr]
        if name.startswith("StasisApp."):
            task.cancel()


async def _continued(h: Harness, channel_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not any(
        e.get("kind") == "rest" and e.get("path") == f"/channels/{channel_id}/continue"
        for e in h.sim.log
    ):
        assert loop.time() < deadline, "the call was never continued"
        await asyncio.sleep(0.01)


async def _restart_controller(
    h: Harness, tmp_path: Path, ledger: object | None = None, scale: float = SCALE
) -> tuple[StasisApp, AriClient]:
    """A controller over the harness's simulator; its sessions reach the store through
    `ledger` when given (one that refuses or watches)."""
    assert h.sim is not None
    client = AriClient(h.sim.base_url, "callrec", h.sim_password, "callrec")
    deps = SessionDeps(
        ledger=h.store if ledger is None else cast(Ledger, ledger),
        store=h.store,
        clock=h.clock,
        events=h.events,
        spool_dir=tmp_path / "spool",
        prompt_versions={},
        collector=h.collector,
    )
    return StasisApp(client, deps, POLICY, timer_scale=scale), client


async def _ended(h: Harness, call_id: str) -> CallRow:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        row = await h.store.get_call(call_id)
        assert row is not None
        if row.ended_at is not None:
            return row
        assert loop.time() < deadline, "the new controller did not finish the call"
        await asyncio.sleep(0.02)


async def _until_stored(h: Harness, call_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await stored(h, call_id):
        assert loop.time() < deadline, "the recording was never stored"
        await asyncio.sleep(0.02)


async def test_restarted_controller_finishes_calls_it_lost(tmp_path: Path) -> None:
    """The controller dies after continue; the call ends unseen. A new controller on the same
    store finishes it at start-up: the recording is stored and the outcome written."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        placed = await h.sim.place_call(SERVICE, "041 555 207", PRESS_1)
        await _continued(h, placed.channel_id)
        call_id = h.stasis.call_id_of(placed.channel_id)
        assert call_id is not None
        _crash(h)
        await h.client.close()
        result = await asyncio.wait_for(placed.done, 30)
        assert result.recorded_file is not None
        assert (await h.store.get_call(call_id)).ended_at is None  # type: ignore[union-attr]
        app, client = await _restart_controller(h, tmp_path)
        task = asyncio.create_task(app.run())
        try:
            row = await _ended(h, call_id)
            assert row.outcome is not None and row.outcome.value == "answered"
            await _until_stored(h, call_id)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()


async def test_crash_before_continue_never_records(tmp_path: Path) -> None:
    """The controller dies after committing a yes but before handing the channel back: the
    new controller releases the channel unrecorded and closes the call; nothing records."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.fail_next("POST", "/channels/*/continue", status=500, delay=5.0)
        placed = await h.sim.place_call(SALES, "041 555 209", PRESS_1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # the decision is committed, the continue is in flight
            call_id = h.stasis.call_id_of(placed.channel_id)
            row = await h.store.get_call(call_id) if call_id else None
            if row is not None and row.recording_file is not None:
                break
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        _crash(h)
        await h.client.close()
        app, client = await _restart_controller(h, tmp_path)
        task = asyncio.create_task(app.run())
        try:
            result = await asyncio.wait_for(placed.done, 30)
            assert result.recorded_file is None
            assert result.variables.get("CALLREC_RECORD") == "no"
            ended = await _ended(h, row.call_id)
            assert not await stored(h, ended.call_id)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()


async def test_shutdown_sends_undecided_calls_on_unrecorded(tmp_path: Path) -> None:
    """On shutdown, a caller still hearing the question goes on to an agent, unrecorded."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        late = CallerScript(keys=((30.0, "1"),), agent_answers_after=1.0, talk_seconds=2.0)
        placed = await h.sim.place_call(SERVICE, "041 555 208", late)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while h.stasis.call_id_of(placed.channel_id) is None:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        call_id = h.stasis.call_id_of(placed.channel_id)
        await h.stasis.shutdown(grace=0.5)
        result = await asyncio.wait_for(placed.done, 30)
        row = await h.store.get_call(call_id)  # type: ignore[arg-type]
        assert row is not None and row.decision is Decision.NONE
        assert result.recorded_file is None


async def test_a_missing_notice_sound_never_records(tmp_path: Path) -> None:
    """The sales notice's sound is missing on the PBX: the playback fails, nobody was told,
    and the call goes on to an agent unrecorded."""
    sales = POLICY.line_named("sales")
    assert sales is not None
    broken = replace(sales, prompts=replace(sales.prompts, notice="callrec-no-such-sound"))
    others = tuple(line for line in POLICY.lines if line.name != "sales")
    policy = replace(POLICY, lines=(broken, *others))
    async with harness(policy, tmp_path, time_scale=SCALE) as h:
        result = await call(h, SALES, "041 555 210", PRESS_1)
        row = await finished(h, result)
        assert row.decision is Decision.NONE
        assert result.recorded_file is None
        assert result.answered_by_agent


async def test_a_second_client_on_the_app_name_does_not_silence_the_controller(
    tmp_path: Path,
) -> None:
    """Another client registers `callrec` (a second serve, a replay) and leaves: while it
    holds the name its calls are not ours; once it has gone the controller takes the name back
    and records the next caller who presses 1."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        assert await h.client.application_registered()
        assert h.sim is not None
        intruder = AriClient(h.sim.base_url, "callrec", h.sim_password, "callrec")
        seen = []

        async def listen() -> None:
            async for item in intruder.events():
                seen.append(item)

        task = asyncio.get_running_loop().create_task(listen())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while h.client.connected:
            assert loop.time() < deadline, "the controller never heard ApplicationReplaced"
            await asyncio.sleep(0.01)
        await intruder.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while not h.client.connected:
            assert loop.time() < deadline + 10, "the controller did not take the app back"
            await asyncio.sleep(0.05)
        result = await call(h, SERVICE, "041 555 230", PRESS_1)
        assert await stored(h, (await finished(h, result)).call_id)


class _RefusingLedger:
    """The store, except that it cannot take a new call (a full disk, a locked file)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.refused = 0

    async def start_call(self, call: CallStart, *, lazy: bool = False) -> None:
        self.refused += 1
        raise StoreFullError("no space left for the ledger (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextlib.asynccontextmanager
async def app_over(h: Harness, tmp_path: Path, ledger: object, scale: float) -> AsyncIterator[None]:
    """The harness's controller replaced by a Stasis app whose sessions reach the store
    through `ledger` (one that refuses or watches), connected for the test's calls."""
    _crash(h)
    await h.client.close()
    app, client = await _restart_controller(h, tmp_path, ledger, scale)
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(client.wait_connected(), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def test_a_call_the_ledger_cannot_take_goes_on_unrecorded(tmp_path: Path) -> None:
    """The ledger refuses the call's start: the caller still hears the question and reaches
    an agent after pressing 1, but no decision is committed and nothing records."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        ledger = _RefusingLedger(h.store)
        async with app_over(h, tmp_path, ledger, SCALE):
            result = await call(h, SERVICE, "041 555 231", PRESS_1)
        assert ledger.refused == 1
        assert "callrec-consent-question" in result.prompts_played
        assert result.recorded_file is None
        assert result.variables.get("CALLREC_RECORD") == "no"
        assert result.answered_by_agent  # refusing to record never costs the call
        assert await h.store.recordings(include_deleted=True) == []


async def test_the_decision_reaches_the_channel_in_one_request(tmp_path: Path) -> None:
    """A caller who presses 1 gets CALLREC_CALL_ID, CALLREC_FILE and CALLREC_RECORD from one
    ARRAY() write, so the dialplan never sees "yes" without the file, and is recorded."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        assert h.sim is not None
        result = await call(h, SERVICE, "041 555 240", PRESS_1)
        row = await finished(h, result)
        writes = [
            e
            for e in h.sim.log
            if e["kind"] == "rest"
            and e["method"] == "POST"
            and e["path"] == f"/channels/{result.channel_id}/variable"
        ]
        assert [w["params"]["variable"] for w in writes] == [
            "ARRAY(CALLREC_CALL_ID,CALLREC_FILE,CALLREC_RECORD)"
        ]
        assert result.variables["CALLREC_CALL_ID"] == row.call_id
        assert result.variables["CALLREC_FILE"] == row.recording_file == result.recorded_file
        assert result.variables["CALLREC_RECORD"] == "yes"
        await _until_stored(h, row.call_id)


async def test_a_spool_path_that_array_would_split_is_never_recorded(tmp_path: Path) -> None:
    """A spool directory with a comma in its path cannot pass through ARRAY() whole: the
    caller who pressed 1 still reaches an agent, unrecorded, and the ledger says why."""
    async with harness(POLICY, tmp_path, time_scale=SCALE, spool_dir=tmp_path / "sp,ool") as h:
        assert h.sim is not None
        result = await call(h, SERVICE, "041 555 241", PRESS_1)
        row = await finished(h, result)
        assert result.recorded_file is None and result.answered_by_agent
        assert result.variables.get("CALLREC_RECORD") != "yes"
        assert row.decision is Decision.RECORD
        reasons = [
            e.details["reason"]
            for e in await h.store.audit_entries(row.call_id)
            if e.action == "recording.not_started"
        ]
        assert len(reasons) == 1 and reasons[0].startswith("recording could not be started")


class _StartWatch:
    """The store, noting whether each decision carried its call's start; with `hold`, the
    start is held back until the decision is in (a slow disk)."""

    def __init__(self, store: SqliteStore, *, hold: bool) -> None:
        self._store = store
        self._hold = hold
        self._decided = asyncio.Event()
        self.carried: list[bool] = []

    async def start_call(self, call: CallStart, *, lazy: bool = False) -> None:
        if self._hold:
            await self._decided.wait()
        await self._store.start_call(call, lazy=lazy)

    async def commit_decision(self, record: DecisionRecord, start: CallStart | None = None) -> None:
        self.carried.append(start is not None)
        await self._store.commit_decision(record, start)
        self._decided.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("hold", [True, False])
async def test_a_decision_carries_its_calls_start_only_while_it_is_on_its_way(
    tmp_path: Path, hold: bool
) -> None:
    """A start still on its way (held back here) is written in the decision's transaction,
    so the decision never waits for it; a start already committed (the caller pressed 1
    after the start's lazy wait) is not written again."""
    scale = 0.3  # the digit 0.6 s in: well after a start's lazy wait (`START_WAIT`)
    async with harness(POLICY, tmp_path, time_scale=scale) as h:
        ledger = _StartWatch(h.store, hold=hold)
        async with app_over(h, tmp_path, ledger, scale):
            result = await call(h, SERVICE, "041 555 232", PRESS_1)
        assert ledger.carried == [hold]
        assert result.recorded_file is not None
        row = await h.store.get_call(result.variables["CALLREC_CALL_ID"])
        assert row is not None and row.decision is Decision.RECORD
        assert row.caller == "+38641555232"  # the start's own fields, written once
