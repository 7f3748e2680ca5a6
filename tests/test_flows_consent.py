"""The inbound flow: events in, commands out, and properties over random event sequences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.commands import (
    Answer,
    CancelWait,
    Command,
    CommitDecision,
    Continue,
    PlayPrompt,
    SkipRecording,
    StartRecording,
    StopPrompt,
    WaitForDigit,
)
from flows.consent import TRANSITIONS, InboundFlow, State, diagram
from flows.errors import FlowError
from flows.events import (
    CallEntered,
    CallerHungUp,
    CommitFailed,
    ControlLost,
    DecisionCommitted,
    DigitPressed,
    DigitTimedOut,
    PromptFailed,
    PromptFinished,
)
from flows.keys import DTMF_KEYS
from flows.machine import When, event_type
from flows.policy import Decision, LegalBasis, Policy

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
POLICY = Policy()
SALES = POLICY.line_named("sales")
SERVICE = POLICY.line_named("service")
assert SALES is not None and SERVICE is not None


def run(flow: InboundFlow, *events: object) -> list[Command]:
    out: list[Command] = []
    for event in events:
        out.extend(flow.handle(event, NOW))
    return out


def names(commands: list[Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


def service() -> InboundFlow:
    return InboundFlow.for_line(SERVICE, POLICY)


def test_sales_call_plays_notice_then_records() -> None:
    """A sales caller hears the whole notice, no key is asked, and the call is recorded."""
    flow = InboundFlow.for_line(SALES, POLICY)
    out = run(flow, CallEntered())
    assert out == [Answer(), PlayPrompt("callrec-sales-notice", barge_in=False, token=1)]
    out = run(flow, DigitPressed("2"), PromptFinished(1))
    assert names(out) == ["CommitDecision"]
    commit = out[0]
    assert isinstance(commit, CommitDecision)
    assert commit.decision is Decision.RECORD
    assert commit.legal_basis is LegalBasis.ZEKOM2_214_7
    assert run(flow, DecisionCommitted()) == [StartRecording(), Continue()]


@pytest.mark.parametrize(
    ("events", "decision", "recorded"),
    [
        ([PromptFinished(1), DigitPressed("1")], Decision.RECORD, True),
        ([PromptFinished(1), DigitPressed("2")], Decision.REFUSE, False),
        ([DigitPressed("1")], Decision.RECORD, True),  # barge-in
        (
            [DigitPressed("5"), PromptFinished(1), PromptFinished(2), DigitPressed("1")],
            Decision.RECORD,
            True,
        ),
        (
            [PromptFinished(1), DigitTimedOut(1), PromptFinished(2), DigitTimedOut(2)],
            Decision.NONE,
            False,
        ),
        ([PromptFinished(1), DigitTimedOut(1), DigitPressed("2")], Decision.REFUSE, False),
    ],
    ids=["press-1", "press-2", "barge-in-1", "other-key-then-1", "silence-twice", "silence-then-2"],
)
def test_consent_line_decisions(events: list[object], decision: Decision, recorded: bool) -> None:
    """Each way of answering the question leads to its decision, and only 1 records."""
    flow = service()
    run(flow, CallEntered(), *events)
    assert flow.state is State.COMMITTING
    assert flow.decision is decision
    after = run(flow, DecisionCommitted())
    assert (StartRecording() in after) is recorded
    assert after[-1] == Continue()  # refusing costs nothing: the call goes on either way


def test_barge_in_stops_the_prompt_before_committing() -> None:
    """A key during the question stops the playback, then commits."""
    flow = service()
    run(flow, CallEntered())
    out = run(flow, DigitPressed("1"))
    assert names(out) == ["StopPrompt", "CommitDecision"]
    assert out[0] == StopPrompt(1)


def test_stale_playback_finished_is_ignored() -> None:
    """Asterisk reports PlaybackFinished for a stopped playback; it must not start the timer."""
    flow = service()
    run(flow, CallEntered(), DigitPressed("7"))  # replays the choice as prompt token 2
    assert run(flow, PromptFinished(1)) == []
    assert flow.state is State.HEARING_QUESTION
    out = run(flow, PromptFinished(2))
    assert out == [WaitForDigit(POLICY.digit_timeout, token=2)]


def test_silence_asks_once_more_with_the_short_prompt() -> None:
    """No key after the question: the choice is asked once more, then no decision."""
    flow = service()
    out = run(flow, CallEntered(), PromptFinished(1), DigitTimedOut(1))
    assert out[-1] == PlayPrompt("callrec-consent-again", barge_in=True, token=2)
    out = run(flow, PromptFinished(2), DigitTimedOut(2))
    assert isinstance(out[-1], CommitDecision) and out[-1].decision is Decision.NONE
    assert run(flow, DecisionCommitted()) == [SkipRecording("no decision"), Continue()]


def test_endless_wrong_keys_end_without_recording() -> None:
    """Past the limit of wrong keys the call goes on with no decision."""
    flow = service()
    run(flow, CallEntered())
    for _ in range(POLICY.invalid_key_limit):
        run(flow, DigitPressed("9"))
        assert flow.state is State.HEARING_QUESTION
    out = run(flow, DigitPressed("9"))
    assert isinstance(out[-1], CommitDecision) and out[-1].decision is Decision.NONE


def test_hang_up_during_question_commits_no_decision() -> None:
    """A caller who leaves during the question is never recorded."""
    flow = service()
    out = run(flow, CallEntered(), CallerHungUp())
    assert isinstance(out[-1], CommitDecision) and out[-1].decision is Decision.NONE
    assert run(flow, DecisionCommitted()) == []


def test_hang_up_while_committing_a_yes_starts_nothing() -> None:
    """The caller pressed 1 and hung up before the ledger confirmed: nothing records."""
    flow = service()
    run(flow, CallEntered(), DigitPressed("1"), CallerHungUp())
    assert run(flow, DecisionCommitted()) == []
    assert flow.state is State.HUNG_UP


def test_failed_commit_goes_on_unrecorded() -> None:
    """Without a committed decision nothing is recorded, and the caller still reaches an agent."""
    flow = service()
    run(flow, CallEntered(), DigitPressed("1"))
    out = run(flow, CommitFailed("disk full"))
    assert names(out) == ["SkipRecording", "Continue"]


def test_control_lost_fails_closed() -> None:
    """When the channel cannot be driven, the flow commits no decision."""
    flow = service()
    out = run(flow, CallEntered(), ControlLost("500 from Asterisk"))
    assert isinstance(out[-1], CommitDecision) and out[-1].decision is Decision.NONE
    assert StopPrompt(1) in out  # the question stops: it would hold the channel


def test_event_missing_from_the_table_raises_with_state() -> None:
    """An event the table does not allow is an error naming the state."""
    flow = InboundFlow.for_line(SALES, POLICY, call_id="abc")
    with pytest.raises(FlowError, match="AWAITING_CALL") as info:
        flow.handle(DecisionCommitted(), NOW)
    assert info.value.call_id == "abc"


def test_every_state_accepts_a_hang_up() -> None:
    """A hang-up is written in the table for every state."""
    for state in State:
        assert CallerHungUp in TRANSITIONS[state]


def test_every_condition_of_an_accepted_event_has_a_row() -> None:
    """Where a state takes an event, each condition the flow tells apart for it has a row
    (its own, or the row of the bare event type), so no classified event finds a hole."""
    conditions = [t for rows in TRANSITIONS.values() for t in rows if isinstance(t, When)]
    for state, rows in TRANSITIONS.items():
        accepted = {event_type(t) for t in rows}
        for condition in conditions:
            if condition.event in accepted:
                assert condition in rows or condition.event in rows, (state, str(condition))


def test_diagram_names_every_state() -> None:
    """The Mermaid diagram shows each state of the table."""
    text = diagram()
    assert text.startswith("stateDiagram-v2")
    for state in State:
        assert state.name in text


EVENTS = st.one_of(
    st.builds(DigitPressed, st.sampled_from(list(DTMF_KEYS))),
    st.builds(PromptFinished, st.integers(0, 6)),
    st.builds(PromptFailed, st.integers(0, 6)),
    st.builds(DigitTimedOut, st.integers(0, 6)),
    st.just(CallerHungUp()),
    st.just(DecisionCommitted()),
    st.builds(CommitFailed, st.just("x")),
    st.builds(ControlLost, st.just("x")),
)


def _drive(flow: InboundFlow, events: list[object]) -> list[tuple[object, list[Command]]]:
    trace: list[tuple[object, list[Command]]] = [(CallEntered(), flow.handle(CallEntered(), NOW))]
    committing = False
    for event in events:
        # The adapter sends DecisionCommitted/CommitFailed only after a CommitDecision.
        if isinstance(event, DecisionCommitted | CommitFailed) and not committing:
            continue
        try:
            out = flow.handle(event, NOW + timedelta(seconds=len(trace)))
        except FlowError:
            continue  # not allowed in this state: the adapter never sends it there
        if any(isinstance(c, CommitDecision) for c in out):
            committing = True
        if isinstance(event, DecisionCommitted | CommitFailed):
            committing = False
        trace.append((event, out))
    return trace


@settings(max_examples=400, deadline=None)
@given(st.lists(EVENTS, max_size=25), st.sampled_from(["sales", "service"]))
def test_recording_needs_a_committed_yes(events: list[object], line_name: str) -> None:
    """No sequence records on a consent line without a 1, none records after a hang-up, and
    StartRecording always follows the commit of a RECORD decision and its confirmation."""
    line = POLICY.line_named(line_name)
    assert line is not None
    flow = InboundFlow.for_line(line, POLICY)
    trace = _drive(flow, events)
    committed: CommitDecision | None = None
    confirmed = False
    hung_up = False
    pressed_one = False
    for event, out in trace:
        if isinstance(event, CallerHungUp):
            hung_up = True
        if isinstance(event, DigitPressed) and event.digit == "1":
            pressed_one = True
        if isinstance(event, DecisionCommitted):
            confirmed = True
        for command in out:
            if isinstance(command, CommitDecision):
                committed = command
            if isinstance(command, StartRecording):
                assert not hung_up
                assert committed is not None and committed.decision is Decision.RECORD
                assert confirmed and isinstance(event, DecisionCommitted)
                if line_name == "service":
                    assert pressed_one and committed.digit == "1"
    starts = sum(isinstance(c, StartRecording) for _, out in trace for c in out)
    assert starts <= 1


def test_wait_commands_are_cancelled_on_key() -> None:
    """A key during the digit wait cancels that wait's timer."""
    flow = service()
    run(flow, CallEntered(), PromptFinished(1))
    out = run(flow, DigitPressed("2"))
    assert out[0] == CancelWait(1)


def test_a_notice_that_failed_to_play_is_not_a_notice() -> None:
    """A failed playback of the sales notice leads to no decision, never to a recording."""
    flow = InboundFlow.for_line(SALES, POLICY)
    run(flow, CallEntered())
    out = run(flow, PromptFailed(1))
    assert isinstance(out[-1], CommitDecision) and out[-1].decision is Decision.NONE
    assert run(flow, DecisionCommitted()) == [SkipRecording("no decision"), Continue()]


def test_a_stale_failed_playback_is_ignored() -> None:
    """A failure reported for a prompt already replaced changes nothing."""
    flow = service()
    run(flow, CallEntered(), DigitPressed("7"))
    assert run(flow, PromptFailed(1)) == []
    assert flow.state is State.HEARING_QUESTION
