"""The policy's cases end to end in FastAGI mode: a scripted Asterisk (a real TCP client on
loopback) replays transcripts written from `res/res_agi.c`, and the exact command lines the
server sends are checked against them; the ledger is checked after each call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import Harness, fastagi_harness

from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis
from storage.ports import CallRow, RecordingStatus

WAV = b"RIFF" + b"\0" * 40 + b"\x01\x02" * 4000  # a header and some audio


@pytest.fixture
async def agi(tmp_path: Path) -> AsyncIterator[Harness]:
    async with fastagi_harness(tmp_path) as harness:
        yield harness


class DecisionHook:
    """At a `! decision <value> [binding]` line: the ledger must already hold the decision."""

    def __init__(self, agi: Harness) -> None:
        self.agi = agi
        self.checked: list[str] = []

    async def __call__(self, bound: dict[str, str], expected: str, key: str = "call_id") -> None:
        row = await self.agi.store.get_call(bound[key])
        assert row is not None, f"no ledger row for {key} when the server moved on"
        assert row.decided_at is not None, "the decision was not committed yet"
        assert row.decision == Decision(expected)
        self.checked.append(bound[key])


async def play(agi: Harness, name: str, **bindings: str) -> tuple[dict[str, str], DecisionHook]:
    hook = DecisionHook(agi)
    bound = await agi.peer().play(name, {"spool": str(agi.spool), **bindings}, {"decision": hook})
    return bound, hook


async def row_of(agi: Harness, call_id: str) -> CallRow:
    row = await agi.store.get_call(call_id)
    assert row is not None
    return row


async def hang_up(
    agi: Harness, call_id: str, *, answered: str = "0", abandoned: str = "", agent: str = ""
) -> None:
    await play(
        agi,
        "hangup_report.agi",
        call_id=call_id,
        answered=answered,
        abandoned=abandoned,
        agent=agent,
    )
    # The report is answered at once; the file is stored once MixMonitor has closed it.
    await agi.deps.collector.drain()


async def test_sales_call_is_recorded_only_after_its_decision_is_committed(agi: Harness) -> None:
    """Sales line: the notice plays to its end, and MixMonitor is EXEC'd with the decision
    already in the ledger; the hangup report stores answered and ingests the file."""
    bound, hook = await play(agi, "inbound_sales.agi")
    call_id = bound["call_id"]
    assert hook.checked == [call_id]
    row = await row_of(agi, call_id)
    assert row.direction is Direction.INBOUND
    assert (row.line, row.dialed, row.caller) == ("sales", "+38640404045", "+38641123456")
    assert row.legal_basis is LegalBasis.ZEKOM2_214_7
    assert row.prompt_sha256 == "ab" * 32
    assert row.recording_file == str(agi.spool / f"{call_id}.wav")
    assert row.ended_at is None  # it went on to the queue
    assert agi.sink.kinds() == ["decision", "recording/started"]

    (agi.spool / f"{call_id}.wav").write_bytes(WAV)
    await hang_up(agi, call_id, answered="42", agent="PJSIP/agent7-00000014")
    row = await row_of(agi, call_id)
    assert row.outcome is Outcome.ANSWERED
    [recording] = await agi.store.recordings()
    assert recording.call_id == call_id
    assert recording.status is RecordingStatus.STORED
    assert recording.path is not None and Path(recording.path).read_bytes() == WAV
    assert not (agi.spool / f"{call_id}.wav").exists()


@pytest.mark.parametrize(
    ("transcript", "digit"),
    [("inbound_service_consent.agi", "1"), ("inbound_invalid_then_1.agi", "1")],
)
async def test_service_call_with_1_is_recorded(agi: Harness, transcript: str, digit: str) -> None:
    """Service line: 1 (pressed during the question, or after a wrong key and the repeat)
    is consent; the decision is committed before MixMonitor starts."""
    bound, hook = await play(agi, transcript)
    row = await row_of(agi, bound["call_id"])
    assert hook.checked == [bound["call_id"]]
    assert (row.decision, row.digit, row.legal_basis) == (Decision.RECORD, digit, "consent")
    assert row.line == "service"


async def test_service_call_with_2_goes_on_unrecorded(agi: Harness) -> None:
    """Service line: 2 refuses; the channel is told not to record and goes on to an agent."""
    bound, _ = await play(agi, "inbound_service_refusal.agi")
    call_id = bound["call_id"]
    row = await row_of(agi, call_id)
    assert (row.decision, row.digit, row.recording_file) == (Decision.REFUSE, "2", None)
    await hang_up(agi, call_id, answered="17", agent="PJSIP/agent7-00000015")
    assert (await row_of(agi, call_id)).outcome is Outcome.ANSWERED
    assert await agi.store.recordings() == []
    assert "recording/skipped" in agi.sink.kinds()


async def test_silence_twice_goes_on_unrecorded(agi: Harness) -> None:
    """No key after the question and its repeat: no decision, not recorded, and the caller
    still reaches the queue (a missed call, since nobody answered)."""
    bound, _ = await play(agi, "inbound_silence_twice.agi")
    call_id = bound["call_id"]
    row = await row_of(agi, call_id)
    assert (row.decision, row.digit, row.recording_file) == (Decision.NONE, None, None)
    assert row.reason == "no key after 2 questions"
    await hang_up(agi, call_id, answered="0", abandoned="TRUE")
    assert (await row_of(agi, call_id)).outcome is Outcome.MISSED


@pytest.mark.parametrize(
    "transcript",
    [
        "inbound_hangup_in_prompt.agi",
        "inbound_hangup_before_reply.agi",
        "inbound_dead_channel_511.agi",
    ],
)
async def test_hang_up_during_the_prompt_records_nothing(agi: Harness, transcript: str) -> None:
    """A caller gone before deciding (result=-1, HANGUP, a dead channel's 511): decision
    none, abandoned in the prompt, nothing more sent to Asterisk."""
    bound, _ = await play(agi, transcript)
    row = await row_of(agi, bound["call_id"])
    assert row.decision is Decision.NONE
    assert row.reason is not None and row.reason.startswith("the caller hung up")
    assert row.recording_file is None
    assert row.outcome is Outcome.ABANDONED_IN_PROMPT
    assert "recording/started" not in agi.sink.kinds()


async def test_unknown_number_goes_on_unrecorded(agi: Harness) -> None:
    """A dialed number of no line: no session, CALLREC_RECORD=no, and the call goes on."""
    await play(agi, "inbound_unknown_number.agi")
    assert await agi.calls_in_ledger() == 0
    assert agi.server.stats.rejected == 1


async def test_callback_to_a_missed_call_with_1_is_recorded_without_a_prompt(
    agi: Harness,
) -> None:
    """A missed service call with consent, called back: the same communication, recorded
    at once, no prompt, linked to the missed call."""
    missed, _ = await play(agi, "inbound_service_consent.agi")
    (agi.spool / f"{missed['call_id']}.wav").write_bytes(WAV)
    await hang_up(agi, missed["call_id"], answered="0", abandoned="TRUE")
    assert (await row_of(agi, missed["call_id"])).outcome is Outcome.MISSED

    bound, hook = await play(agi, "callback_missed_with_1.agi")
    call_id = bound["call_id"]
    assert hook.checked == [call_id]
    row = await row_of(agi, call_id)
    assert row.direction is Direction.CALLBACK
    assert (row.decision, row.linked_to, row.dialed) == (
        Decision.RECORD,
        missed["call_id"],
        "+38641123456",
    )
    assert row.prompt is None


async def test_callback_without_a_missed_call_plays_the_notice_on_the_callee_leg(
    agi: Harness,
) -> None:
    """No missed call to answer: the agent's leg is not recorded and asks for the notice;
    the customer's leg (`/callee`) hears the question and consents."""
    bound, _ = await play(agi, "callback_new_communication.agi")
    callback = await row_of(agi, bound["call_id"])
    assert (callback.decision, callback.line) == (Decision.NONE, "service")

    callee, hook = await play(agi, "callee_notice.agi", call_id=bound["call_id"])
    assert hook.checked == [callee["callee_id"]]
    row = await row_of(agi, callee["callee_id"])
    assert row.direction is Direction.CALLEE
    assert (row.parent_call_id, row.decision, row.digit) == (bound["call_id"], "record", "1")


async def test_usage_block_fails_closed_and_keeps_the_dialog_in_step(agi: Harness) -> None:
    """A 520- usage block is read to its end; control is lost before a decision, so no
    decision is committed and the next commands still get their own replies."""
    bound, _ = await play(agi, "inbound_usage_520.agi")
    row = await row_of(agi, bound["call_id"])
    assert row.decision is Decision.NONE
    assert row.reason is not None and "control of the channel was lost" in row.reason
    assert row.recording_file is None


async def test_missing_mixmonitor_tells_the_channel_not_to_record(agi: Harness) -> None:
    """EXEC MixMonitor answering -2: CALLREC_RECORD goes back to no, and the hangup report
    finds no file and ingests nothing."""
    bound, _ = await play(agi, "inbound_mixmonitor_missing.agi")
    call_id = bound["call_id"]
    await hang_up(agi, call_id, answered="30", agent="PJSIP/agent7-00000016")
    assert (await row_of(agi, call_id)).outcome is Outcome.ANSWERED
    assert await agi.store.recordings() == []


async def test_garbage_reply_closes_the_connection_unrecorded(agi: Harness) -> None:
    """A reply that is not AGI: the connection cannot be trusted and is closed at once;
    no decision, nothing recorded, and the call is closed in the ledger."""
    bound, _ = await play(agi, "inbound_garbage_reply.agi")
    row = await row_of(agi, bound["call_id"])
    assert (row.decision, row.recording_file) == (Decision.NONE, None)
    assert row.outcome is Outcome.ABANDONED_IN_PROMPT


async def test_hangup_report_twice_changes_nothing(agi: Harness) -> None:
    """A second hangup report for a finished call keeps the first outcome."""
    bound, _ = await play(agi, "inbound_service_refusal.agi")
    await hang_up(agi, bound["call_id"], answered="12", agent="PJSIP/agent7-00000017")
    first = await row_of(agi, bound["call_id"])
    agi.clock.at = agi.clock.at.replace(hour=11)
    await hang_up(agi, bound["call_id"], answered="0", abandoned="TRUE")
    assert await row_of(agi, bound["call_id"]) == first


@pytest.mark.parametrize("call_id", ["", "../../etc/passwd", "0" * 31 + "G", "f" * 32])
async def test_hangup_report_for_no_known_call_does_nothing(agi: Harness, call_id: str) -> None:
    """An empty, malformed or unknown call id in a hangup report touches no row."""
    await hang_up(agi, call_id)
    assert await agi.calls_in_ledger() == 0
    assert agi.server.stats.hangups == 1
