"""Searching calls, one call's story and short ids, on both ledgers (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from storage_helpers import ALICE, BOB, POLICY, T0, open_store, record_call

from flows.errors import CallrecError
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Purpose
from storage.ports import CallFilter, CallStart, DecisionRecord, WithdrawalVia
from storage.store import Store

pytestmark = pytest.mark.usefixtures("ledger")


@pytest.fixture
async def store(tmp_path: Path, spool: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "store", POLICY, spool_dir=spool, create=True)
    try:
        yield opened
    finally:
        await opened.close()


async def test_calls_are_found_by_each_filter_newest_first(store: Store, spool: Path) -> None:
    """Each filter narrows the calls to those it names; refused calls are listed too."""
    alice, _ = await record_call(store, spool, at=T0, caller=ALICE, end=False)
    await store.end_call(alice, T0 + timedelta(minutes=3), Outcome.ANSWERED, "PJSIP/1001")
    refused, _ = await record_call(
        store, spool, at=T0 + timedelta(hours=1), caller=BOB, decision=Decision.REFUSE
    )
    missed, _ = await record_call(
        store, spool, at=T0 + timedelta(hours=2), caller=BOB, line="sales", outcome=Outcome.MISSED
    )
    everything = await store.calls(CallFilter())
    assert [c.call_id for c in everything] == [missed, refused, alice]
    assert [c.call_id for c in await store.calls(CallFilter(customer=BOB))] == [missed, refused]
    assert [c.call_id for c in await store.calls(CallFilter(line="sales"))] == [missed]
    found = await store.calls(CallFilter(decision=Decision.REFUSE))
    assert [c.call_id for c in found] == [refused] and found[0].recording_id is None
    found = await store.calls(CallFilter(outcome=Outcome.MISSED))
    assert [c.call_id for c in found] == [missed]
    found = await store.calls(CallFilter(agent="PJSIP/1001"))
    assert [(c.call_id, c.agent) for c in found] == [(alice, "PJSIP/1001")]
    window = CallFilter(start=T0 + timedelta(minutes=30), end=T0 + timedelta(hours=2))
    assert [c.call_id for c in await store.calls(window)] == [refused]
    reversed_range = CallFilter(start=T0 + timedelta(hours=2), end=T0)
    assert await store.calls(reversed_range) == []
    assert [c.call_id for c in await store.calls(CallFilter(limit=1))] == [missed]
    hostile = CallFilter(customer="' OR 1=1 --", line="x' OR '1'='1")
    assert await store.calls(hostile) == []
    assert len(await store.calls(CallFilter())) == 3  # nothing was dropped


async def test_a_call_story_holds_its_recording_callbacks_and_withdrawal(
    store: Store, spool: Path
) -> None:
    """The story of a missed call names its callback, its recording's access, export and
    the withdrawal that deleted it; the callback's story names the missed call."""
    missed, path = await record_call(store, spool, at=T0, caller=ALICE, outcome=Outcome.MISSED)
    recording = await store.ingest(missed, path, T0 + timedelta(minutes=4))
    assert recording is not None
    await store.access(recording.id, Purpose.QUALITY, "qa", T0 + timedelta(minutes=5))
    await store.export(
        [recording.id], spool.parent / "out", Purpose.EVIDENCE, "dpo", T0 + timedelta(minutes=6)
    )
    back = "c" * 32
    await store.start_call(
        CallStart(
            call_id=back,
            channel_id="1.2",
            direction=Direction.CALLBACK,
            line="service",
            caller=None,
            dialed=ALICE,
            started_at=T0 + timedelta(minutes=20),
            customer=ALICE,
        )
    )
    await store.commit_decision(
        DecisionRecord(
            call_id=back,
            decision=Decision.REFUSE,
            legal_basis=LegalBasis.CONSENT,
            digit=None,
            reason="callback",
            prompt=None,
            prompt_sha256=None,
            decided_at=T0 + timedelta(minutes=21),
            linked_to=missed,
            window=timedelta(hours=1),
            communication_id=missed,
        )
    )
    await store.end_call(back, T0 + timedelta(minutes=25), Outcome.ANSWERED)
    await store.withdraw(
        ALICE, WithdrawalVia.EMAIL, T0 + timedelta(hours=1), "dpo", T0 + timedelta(hours=1)
    )
    story = await store.call_story(missed)
    assert story is not None and story.recording is not None
    assert story.recording.id == recording.id and story.recording.deleted_at is not None
    assert [(b.callback_call_id, b.answered_at) for b in story.called_back] == [
        (back, T0 + timedelta(minutes=25))
    ]
    assert [a.who for a in story.accesses] == ["qa", "dpo"]
    assert [(e.who, e.purpose) for e in story.exports] == [("dpo", "evidence")]
    assert [w.deleted for w in story.withdrawals] == [(recording.id,)]
    assert {"decision.committed", "recording.stored", "recording.deleted"} <= {
        e.action for e in story.audit
    }
    callback = await store.call_story(back)
    assert callback is not None and callback.callback_of is not None
    assert callback.callback_of.missed_call_id == missed
    assert await store.call_story("d" * 32) is None


async def test_a_short_id_resolves_when_unique_and_is_refused_otherwise(
    store: Store, spool: Path
) -> None:
    """A unique prefix gives the whole id; an ambiguous, unknown or malformed one is a
    one-line error saying which."""
    for call_id in ("abcdef01" + "0" * 24, "abcdef02" + "0" * 24):
        await store.start_call(
            CallStart(
                call_id=call_id,
                channel_id=call_id[:8],
                direction=Direction.INBOUND,
                line="service",
                caller=ALICE,
                dialed=None,
                started_at=T0,
            )
        )
    assert await store.resolve_id("call", "ABCDEF01") == "abcdef01" + "0" * 24
    with pytest.raises(CallrecError, match="more than one call id"):
        await store.resolve_id("call", "abcdef")
    with pytest.raises(CallrecError, match="no call id starts with 0123456"):
        await store.resolve_id("call", "0123456")
    with pytest.raises(CallrecError, match="not a call id"):
        await store.resolve_id("call", "abc' OR '1'='1")
    call_id, path = await record_call(store, spool)
    recording = await store.ingest(call_id, path, T0)
    assert recording is not None
    assert await store.resolve_id("recording", recording.id[:16]) == recording.id
