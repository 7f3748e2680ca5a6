"""The controller when Asterisk is slow or refuses: every caller reaches the queue, none is
hung up by the controller, and every decision to record ends recorded or marked unrecorded
in the ledger with a reason."""

from __future__ import annotations

import asyncio
import configparser
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import wav_bytes

from agi.ari import DEFAULT_MAX_CONNECTIONS, _Gate
from agi.session import DecisionLag
from agi.simpbx import CallerScript, CallResult
from callrec.config import DEFAULT_ARI_MAX_CONNECTIONS, load_settings
from callrec.harness import Harness, harness
from flows.errors import ConfigError, StorageError
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Policy
from flows.shedding import Load, ShedBounds, shed_reason
from storage.calls import END_WAIT, START_WAIT
from storage.ingest import INGEST_WAIT
from storage.ports import CallRow, CallStart, DecisionRecord, RecordingStatus
from storage.sqlite import SqliteStore
from storage.store import Store

POLICY = replace(Policy(), overload_window=timedelta(hours=3))
SCALE = 0.02
SERVICE = "040 40 40 40"
PRESS_1 = CallerScript(keys=((2.0, "1"),), agent_answers_after=2.0, talk_seconds=4.0)
HTTP_CONF = Path(__file__).resolve().parent.parent / "asterisk-conf" / "http.conf"


async def calls(
    h: Harness, count: int, script: CallerScript = PRESS_1, *, every: float = 0.0
) -> list[CallResult]:
    """`count` callers on the service line, each pressing 1, one per `every` seconds."""
    placed = []
    for n in range(count):
        placed.append(await h.sim.place_call(SERVICE, f"041 555 {300 + n:03d}", script))
        await asyncio.sleep(every)
    return list(await asyncio.wait_for(asyncio.gather(*(p.done for p in placed)), 60))


async def finished(h: Harness, result: CallResult) -> CallRow:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while h.app.is_live(result.channel_id):
        assert loop.time() < deadline, "the controller did not finish the call"
        await asyncio.sleep(0.01)
    call_id = h.app.call_id_of(result.channel_id)
    assert call_id is not None
    row = await h.store.get_call(call_id)
    assert row is not None and row.ended_at is not None
    return row


def hung_up_by_controller(h: Harness) -> list[str]:
    return [
        e["path"]
        for e in h.sim.log
        if e.get("kind") == "rest" and e.get("method") == "DELETE" and "/channels/" in e["path"]
    ]


async def accounted_for(h: Harness, row: CallRow) -> bool:
    """A "record" decision is recorded (a stored recording) or marked unrecorded."""
    stored = any(
        r.call_id == row.call_id and r.status is RecordingStatus.STORED
        for r in await h.store.recordings()
    )
    marked = any(
        e.action == "recording.not_started" and e.details.get("reason")
        for e in await h.store.audit_entries(row.call_id)
    )
    return stored or marked


async def check_everyone_served(h: Harness, results: list[CallResult]) -> list[CallRow]:
    """Every caller was handed on to the queue and met an agent; nobody was hung up by the
    controller; every "record" decision has its outcome."""
    assert all(r.stasis_status == "SUCCESS" for r in results)
    assert all(r.answered_by_agent for r in results)
    assert hung_up_by_controller(h) == []
    rows = [await finished(h, r) for r in results]
    for row in rows:
        if row.decision is Decision.RECORD:
            assert await accounted_for(h, row), f"call {row.call_id}: record without outcome"
    return rows


async def test_a_409_after_a_timed_out_continue_means_it_went_through(tmp_path: Path) -> None:
    """The first `continue` lands after the client's timeout; its retry is answered 409:
    the caller is in the dialplan, recorded as decided, and not hung up."""
    async with harness(POLICY, tmp_path, time_scale=SCALE, ari_timeout=0.3) as h:
        h.sim.delay_next("POST", "/channels/*/continue", delay=0.4)
        [result] = await calls(h, 1)
        [row] = await check_everyone_served(h, [result])
        assert row.decision is Decision.RECORD
        assert result.recorded_file is not None
        continues = [e["status"] for e in h.sim.log if e.get("path", "").endswith("/continue")]
        assert continues[-1] == 409


async def test_a_continue_that_keeps_failing_is_tried_until_it_goes_through(
    tmp_path: Path,
) -> None:
    """Five 500s on `continue` after a decision to record: the controller keeps trying
    (never hangs up) and the caller reaches the agent, recorded."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.fail_next("POST", "/channels/*/continue", status=500, count=5)
        [result] = await calls(h, 1)
        [row] = await check_everyone_served(h, [result])
        assert row.decision is Decision.RECORD
        assert result.recorded_file is not None


async def test_a_caller_that_cannot_be_served_is_handed_on_not_hung_up(tmp_path: Path) -> None:
    """The notice's playback fails and `continue` fails four times: the caller still
    reaches the agent, unrecorded, and is never hung up."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.fail_next("POST", "/channels/*/play/*", status=500)
        h.sim.fail_next("POST", "/channels/*/continue", status=500, count=4)
        [result] = await calls(h, 1)
        [row] = await check_everyone_served(h, [result])
        assert row.decision is Decision.NONE
        assert result.recorded_file is None


async def test_a_record_decision_not_carried_out_is_marked_unrecorded(tmp_path: Path) -> None:
    """Setting the recording variables fails after the caller pressed 1: the ledger marks the
    "record" decision unrecorded with the reason, and the caller still reaches the agent."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.fail_next("POST", "/channels/*/variable", status=500)
        [result] = await calls(h, 1)
        [row] = await check_everyone_served(h, [result])
        assert row.decision is Decision.RECORD
        assert result.recorded_file is None
        [entry] = [
            e
            for e in await h.store.audit_entries(row.call_id)
            if e.action == "recording.not_started"
        ]
        assert "500" in entry.details["reason"]


async def test_the_client_stays_under_the_session_limit(tmp_path: Path) -> None:
    """Twenty callers at once against a PBX serving four connections, with the client bound
    to three (the events socket takes the fourth): no connection is refused and every caller
    is recorded and served."""
    async with harness(
        POLICY, tmp_path, time_scale=SCALE, max_connections=3, shed_backlog=1000
    ) as h:
        h.sim.limit_sessions(4)
        h.sim.slow_rest(0.002, 0.0)  # answers take long enough for requests to overlap
        results = await calls(h, 20)
        rows = await check_everyone_served(h, results)
        assert h.sim.refused_sessions == 0
        assert h.sim.peak_sessions <= 4
        assert all(r.recorded_file is not None for r in results)
        assert all(row.decision is Decision.RECORD for row in rows)


async def test_callers_reach_the_queue_past_the_session_limit(tmp_path: Path) -> None:
    """A PBX that serves only two connections while the client may open twenty: connections
    are refused, and still every caller reaches the agent and none is hung up."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        h.sim.limit_sessions(2)
        h.sim.slow_rest(0.002, 0.0)
        results = await calls(h, 12)
        await check_everyone_served(h, results)
        assert h.sim.refused_sessions > 0


async def test_answers_slower_than_the_timeout_still_reach_the_queue(tmp_path: Path) -> None:
    """REST answers slow down with load beyond the client's timeout: requests time out, and
    still every caller reaches the agent, none is hung up, every "record" has an outcome."""
    async with harness(POLICY, tmp_path, time_scale=SCALE, ari_timeout=0.3) as h:
        h.sim.slow_rest(0.05, 0.03)
        results = await calls(h, 12)
        await check_everyone_served(h, results)


async def test_a_backlog_sheds_new_calls_to_the_queue_unrecorded(tmp_path: Path) -> None:
    """With requests piling up behind a slow PBX, new calls are handed on at once with no
    prompt: counted, their decision committed as "none" with the reason, and they reach
    the agent like the others."""
    async with harness(POLICY, tmp_path, time_scale=SCALE, max_connections=2, shed_backlog=2) as h:
        h.sim.slow_rest(0.15, 0.0)
        results = await calls(h, 16, every=0.1)
        rows = await check_everyone_served(h, results)
        shed = [row for row in rows if row.reason and row.reason.startswith("shed")]
        assert h.app.shed == len(shed) > 0
        for row in shed:
            assert row.decision is Decision.NONE and row.prompt is None
        shed_channels = {row.channel_id for row in shed}
        for result in results:
            if result.channel_id in shed_channels:
                assert result.prompts_played == ()
                assert result.recorded_file is None


async def test_a_burst_of_calls_a_quick_pbx_answers_is_not_shed(tmp_path: Path) -> None:
    """A hundred callers at once queue far more requests than the connection bound, but a
    PBX that answers at once clears them in moments: every caller hears the question and
    is recorded as they chose, none shed."""
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        results = await calls(h, 100)
        rows = await check_everyone_served(h, results)
    assert h.app.shed == 0
    assert [row.decision for row in rows] == [Decision.RECORD] * 100


async def test_a_held_ledger_sheds_new_calls_to_the_queue_unrecorded(tmp_path: Path) -> None:
    """With the ledger's commits held (a stalled disk), decisions wait: once the oldest has
    waited past the bound, new callers go on at once, with no notice, unrecorded; their
    reason is stored once the ledger moves; nobody is hung up, everyone meets an agent,
    and the held "record" decisions are carried out afterwards."""
    async with harness(POLICY, tmp_path, time_scale=SCALE, shed_decision_lag=0.2) as h:
        held = threading.Event()
        store = h.store
        assert isinstance(store, Store)
        holding = asyncio.get_running_loop().create_task(
            store.ctx.db.write(lambda tx: held.wait(30), "holding the ledger (test)")
        )
        placing = asyncio.get_running_loop().create_task(calls(h, 12, every=0.1))
        await asyncio.sleep(1.5)
        assert h.app.shed > 0, "nothing was shed while the ledger was held"
        held.set()
        await holding
        results = await placing
        rows = await check_everyone_served(h, results)
        shed = [row for row in rows if (row.reason or "").startswith("shed")]
        assert h.app.shed == len(shed) > 0
        assert all("decisions took" in (row.reason or "") for row in shed)
        assert all(row.decision is Decision.NONE for row in shed)
        shed_channels = {row.channel_id for row in shed}
        for result in results:
            if result.channel_id in shed_channels:
                assert result.prompts_played == ()
                assert result.recorded_file is None
        assert any(row.decision is Decision.RECORD for row in rows), "the first were served"


def test_shedding_weighs_asterisk_backlog_and_decision_lag() -> None:
    """A call is shed when Asterisk's request backlog is past its bound and would take it
    too long to clear, or when the controller's decision lag is past its bound; the reason
    says which. A long queue that a quick Asterisk clears at once (a burst) sheds nothing."""
    bounds = ShedBounds(ari_backlog=40, decision_lag=0.5, ari_wait=0.5)
    assert shed_reason(Load(ari_backlog=40, decision_lag=0.5, ari_wait=9.0), bounds) is None
    assert shed_reason(Load(ari_backlog=749, decision_lag=0.0, ari_wait=0.08), bounds) is None
    assert "ARI requests" in (shed_reason(Load(41, 0.0, ari_wait=0.6), bounds) or "")
    assert "decisions took 0.75 s" in (shed_reason(Load(0, 0.75), bounds) or "")


def test_decision_lag_counts_the_oldest_waiting_decision_and_forgets_with_time() -> None:
    """A decision still waiting counts with its whole age; a finished one's time counts
    less as it ages, so a quiet spell after a burst sheds nobody."""
    now = [0.0]
    lag = DecisionLag(clock=lambda: now[0])
    first = lag.begin()
    now[0] = 2.0
    assert lag.seconds() == 2.0
    lag.end(first)
    assert 0 < lag.seconds() <= 2.0
    now[0] = 12.0
    assert lag.seconds() < 0.01


def test_the_default_connection_bound_is_well_under_the_session_limit() -> None:
    """http.conf states its `sessionlimit`; the client's default bound is at most a fifth
    of it, so the events socket and other clients always find room."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), strict=False)
    parser.read(HTTP_CONF)
    limit = int(parser["general"]["sessionlimit"])
    assert DEFAULT_MAX_CONNECTIONS == DEFAULT_ARI_MAX_CONNECTIONS
    assert limit >= DEFAULT_ARI_MAX_CONNECTIONS * 5


def test_the_connection_bound_and_shed_backlog_are_configurable(tmp_path: Path) -> None:
    """`ari.max_connections` and `ari.shed_backlog` come from the config file; a value that
    is not a positive whole number is one clear error."""
    config = tmp_path / "callrec.toml"
    config.write_text("[ari]\nmax_connections = 8\nshed_backlog = 30\nshed_decision_lag_ms = 250\n")
    settings = load_settings(config, env={})
    assert (settings.ari.max_connections, settings.ari.shed_backlog) == (8, 30)
    assert settings.ari.shed_decision_lag_ms == 250
    assert load_settings(None, env={}).ari.max_connections == DEFAULT_ARI_MAX_CONNECTIONS
    config.write_text("[ari]\nmax_connections = 0\n")
    with pytest.raises(ConfigError, match=r"ari\.max_connections"):
        load_settings(config, env={})


async def test_urgent_requests_get_the_next_free_connection() -> None:
    """With every connection busy, a waiting `continue` goes before waiting prompts."""
    gate = _Gate(1)
    await gate.acquire(urgent=False)
    order: list[str] = []

    async def request(name: str, urgent: bool) -> None:
        await gate.acquire(urgent)
        order.append(name)
        gate.release()

    waiting = [
        asyncio.create_task(request("play", False)),
        asyncio.create_task(request("answer", False)),
        asyncio.create_task(request("continue", True)),
    ]
    await asyncio.sleep(0)
    assert gate.waiting == 3
    gate.release()
    await asyncio.gather(*waiting)
    assert order == ["continue", "play", "answer"]
    assert gate.active == 0


def test_the_live_load_benchmark_is_opt_in() -> None:
    """Without an ARI URL the live load benchmark says it skipped and touches nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_TEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.live_load"],
        cwd=HTTP_CONF.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "skipped" in done.stdout


LEDGER_NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def _call_start(n: int) -> CallStart:
    """An inbound call on the service line, its start as the session records it."""
    return CallStart(
        call_id=uuid.uuid4().hex,
        channel_id=f"1796457000.{n}",
        direction=Direction.INBOUND,
        line="service",
        caller=None,
        dialed="+38640404040",
        started_at=LEDGER_NOW,
    )


def _record(call_id: str, now: datetime) -> DecisionRecord:
    """A decision to record, as a session commits it on the digit 1."""
    return DecisionRecord(
        call_id=call_id,
        decision=Decision.RECORD,
        legal_basis=LegalBasis.CONSENT,
        digit="1",
        reason="test",
        prompt=None,
        prompt_sha256=None,
        decided_at=now,
    )


async def test_queued_ledger_writes_share_one_commit_and_fail_alone(tmp_path: Path) -> None:
    """Calls started together are committed as one transaction; a write among them that
    fails (a decision for a call the ledger does not have) fails alone, the others stand."""
    store = await SqliteStore.open(tmp_path / "store", POLICY, create=True)
    try:
        now = LEDGER_NOW
        starts = [_call_start(n) for n in range(5)]
        stray = DecisionRecord(
            call_id=uuid.uuid4().hex,
            decision=Decision.NONE,
            legal_basis=LegalBasis.CONSENT,
            digit=None,
            reason="test",
            prompt=None,
            prompt_sha256=None,
            decided_at=now,
        )
        results = await asyncio.gather(
            *(store.start_call(start) for start in starts),
            store.commit_decision(stray),
            return_exceptions=True,
        )
        assert results[:5] == [None] * 5
        assert isinstance(results[5], StorageError)
        assert store.ctx.db.groups == 1  # type: ignore[attr-defined]
        for start in starts:
            assert await store.get_call(start.call_id) is not None
    finally:
        await store.close()


async def test_a_call_start_shares_the_commit_of_the_next_write(tmp_path: Path) -> None:
    """A lazy call start waits for the ledger's next write and is committed with it (one
    transaction for start and decision); alone, it is committed within `START_WAIT`; and
    closing the store commits a start still waiting."""
    store = await SqliteStore.open(tmp_path / "store", POLICY, create=True)
    now = LEDGER_NOW
    start = _call_start
    try:
        first = start(1)
        starting = asyncio.create_task(store.start_call(first, lazy=True))
        await asyncio.sleep(0)
        assert not starting.done()  # waiting for company
        await store.commit_decision(_record(first.call_id, now))
        assert starting.done()
        assert store.ctx.db.groups == 1  # type: ignore[attr-defined]
        row = await store.get_call(first.call_id)
        assert row is not None and row.decision is Decision.RECORD

        alone = start(2)
        await asyncio.wait_for(store.start_call(alone, lazy=True), START_WAIT + 5)
        assert await store.get_call(alone.call_id) is not None
        assert store.ctx.db.groups == 1

        last = start(3)
        waiting = asyncio.create_task(store.start_call(last, lazy=True))
        await asyncio.sleep(0)
    finally:
        await store.close()
    assert waiting.done() and waiting.exception() is None
    reopened = await SqliteStore.open(tmp_path / "store", POLICY)
    try:
        assert await reopened.get_call(last.call_id) is not None
    finally:
        await reopened.close()


async def test_a_lazy_write_queued_behind_a_busy_writer_still_waits_for_company(
    tmp_path: Path,
) -> None:
    """Under load the ledger's writer is seldom idle: a lazy call start that queues while
    a transaction runs is not committed alone once it ends, but with the next write."""
    store = await SqliteStore.open(tmp_path / "store", POLICY, create=True)
    try:
        gate = threading.Event()

        def slow(tx: Any) -> None:
            gate.wait(5)  # on the ledger's thread: the writer is busy until the test says
            tx.run("UPDATE calls SET agent = NULL WHERE 0")

        busy = asyncio.create_task(store.ctx.db.write(slow, "a slow write"))
        await asyncio.sleep(0.05)
        first = _call_start(1)
        starting = asyncio.create_task(store.start_call(first, lazy=True))
        await asyncio.sleep(0)
        gate.set()
        await busy
        await asyncio.sleep(START_WAIT / 5)
        assert not starting.done()  # still waiting for company, not committed alone
        await store.commit_decision(_record(first.call_id, LEDGER_NOW))
        assert starting.done() and starting.exception() is None
        assert store.ctx.db.groups == 1  # type: ignore[attr-defined]
        row = await store.get_call(first.call_id)
        assert row is not None and row.decision is Decision.RECORD
    finally:
        await store.close()


async def test_a_call_end_shares_the_commit_of_its_recording(tmp_path: Path) -> None:
    """A lazy call end waits for its recording's ingest and is committed in the same
    transaction; with no write after it, it is committed alone within `END_WAIT`."""
    spool = tmp_path / "spool"
    spool.mkdir()
    store = await SqliteStore.open(tmp_path / "store", POLICY, spool_dir=spool, create=True)
    try:
        start = _call_start(1)
        file = spool / f"{start.call_id}.wav"
        await store.start_call(start)
        await store.commit_decision(
            replace(_record(start.call_id, LEDGER_NOW), recording_file=str(file))
        )
        file.write_bytes(wav_bytes(frames=0))  # MixMonitor's header only: not bridged
        ended_at = LEDGER_NOW + timedelta(seconds=30)
        ending = asyncio.create_task(
            store.end_call(start.call_id, ended_at, Outcome.MISSED, lazy=True)
        )
        await asyncio.sleep(0)
        assert not ending.done()
        recording = await store.ingest(start.call_id, file, ended_at)
        assert recording is not None and recording.status is RecordingStatus.EMPTY
        assert ending.done() and store.ctx.db.groups == 1  # type: ignore[attr-defined]
        row = ending.result()
        assert (row.ended_at, row.outcome) == (ended_at, Outcome.MISSED)
        assert not file.exists()

        alone = _call_start(2)
        await store.start_call(alone)
        row = await asyncio.wait_for(
            store.end_call(alone.call_id, ended_at, Outcome.MISSED, lazy=True), END_WAIT + 5
        )
        assert row.outcome is Outcome.MISSED
        assert store.ctx.db.groups == 1  # type: ignore[attr-defined]
    finally:
        await store.close()


async def _recorded_call(store: Store, spool: Path, n: int) -> tuple[str, Path]:
    """A call decided to record, its MixMonitor file only a header (never bridged)."""
    start = _call_start(n)
    file = spool / f"{start.call_id}.wav"
    await store.start_call(start)
    await store.commit_decision(
        replace(_record(start.call_id, LEDGER_NOW), recording_file=str(file))
    )
    file.write_bytes(wav_bytes(frames=0))
    return start.call_id, file


async def test_an_ingest_shares_the_commit_of_a_live_calls_write(tmp_path: Path) -> None:
    """A lazy ingest's first commit waits for the ledger's next write (another call's
    decision) and goes with it; an ingest that other ingests wait behind goes at once."""
    spool = tmp_path / "spool"
    spool.mkdir()
    store = await SqliteStore.open(tmp_path / "store", POLICY, spool_dir=spool, create=True)
    try:
        call_id, file = await _recorded_call(store, spool, 1)
        ingesting = asyncio.create_task(store.ingest(call_id, file, LEDGER_NOW, lazy=True))
        await asyncio.sleep(INGEST_WAIT / 5)
        assert not ingesting.done()
        live = _call_start(2)
        await store.start_call(live)
        assert ingesting.done() and store.ctx.db.groups == 1  # type: ignore[attr-defined]
        recording = ingesting.result()
        assert recording is not None and recording.status is RecordingStatus.EMPTY

        first_id, first_file = await _recorded_call(store, spool, 3)
        second_id, second_file = await _recorded_call(store, spool, 4)
        async with store.ctx.files:  # a sweep's file work, say: both ingests queue
            first = asyncio.create_task(store.ingest(first_id, first_file, LEDGER_NOW, lazy=True))
            await asyncio.sleep(0)
            second = asyncio.create_task(
                store.ingest(second_id, second_file, LEDGER_NOW, lazy=True)
            )
            await asyncio.sleep(0)
        await asyncio.wait_for(first, INGEST_WAIT / 2)  # another waits behind it: not lazy
        assert not second.done()  # the last of the queue waits for company again
        assert (await asyncio.wait_for(second, INGEST_WAIT + 5)) is not None
    finally:
        await store.close()
