"""The one DTMF key table (`flows.keys`) and what the inbound flow makes of each kind."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.commands import CommitDecision, StopPrompt
from flows.consent import InboundFlow, State
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
from flows.keys import DTMF_KEYS, HEARD_KEYS, KEYS, Key, classify, heard
from flows.policy import Decision, Policy

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
POLICY = Policy()


def test_every_dtmf_key_has_the_kind_the_policy_gives_it() -> None:
    """1 consents, 2 refuses, the rest of the keypad says the choice again, A-D mean nothing."""
    expected = {"1": Key.CONSENT, "2": Key.REFUSAL}
    expected |= dict.fromkeys("03456789*#", Key.OTHER)
    expected |= dict.fromkeys("ABCD", Key.IGNORED)
    assert dict(KEYS) == expected
    assert set(DTMF_KEYS) == set(expected)


def test_a_question_is_interrupted_by_every_answer_and_nothing_else() -> None:
    """The escape digits of a question are the twelve keypad keys, in keypad order."""
    assert HEARD_KEYS == "0123456789*#"
    assert all(heard(key) for key in HEARD_KEYS)
    assert not any(heard(key) for key in "ABCD")


@given(st.text(max_size=3).filter(lambda text: text not in KEYS))
def test_anything_that_is_no_dtmf_key_is_ignored(text: str) -> None:
    """A string an adapter might be handed that names no DTMF key is no answer."""
    assert classify(text) is Key.IGNORED
    assert not heard(text)


def service() -> InboundFlow:
    line = POLICY.line_named("service")
    assert line is not None
    return InboundFlow.for_line(line, POLICY)


def test_an_ignored_key_during_the_question_lets_it_play_on() -> None:
    """A during the question neither stops nor replays it; the 1 after it is the answer."""
    flow = service()
    flow.handle(CallEntered(), NOW)
    assert flow.handle(DigitPressed("A"), NOW) == []
    assert flow.state is State.HEARING_QUESTION
    out = flow.handle(DigitPressed("1"), NOW)
    assert out[0] == StopPrompt(1)  # still the first playback: nothing was replayed
    assert isinstance(out[1], CommitDecision)
    assert (out[1].decision, out[1].digit) == (Decision.RECORD, "1")


def test_ignored_keys_never_use_up_the_wrong_key_limit() -> None:
    """Any number of A-D leaves all the caller's chances to answer."""
    flow = service()
    flow.handle(CallEntered(), NOW)
    for key in "ABCD" * 5:
        assert flow.handle(DigitPressed(key), NOW) == []
    flow.handle(PromptFinished(1), NOW)
    out = flow.handle(DigitPressed("2"), NOW)
    assert isinstance(out[-1], CommitDecision) and out[-1].decision is Decision.REFUSE


HEARD_EVENTS = st.one_of(
    st.builds(DigitPressed, st.sampled_from(list(HEARD_KEYS))),
    st.builds(PromptFinished, st.integers(0, 6)),
    st.builds(PromptFailed, st.integers(0, 6)),
    st.builds(DigitTimedOut, st.integers(0, 6)),
    st.just(CallerHungUp()),
    st.just(DecisionCommitted()),
    st.builds(CommitFailed, st.just("x")),
    st.builds(ControlLost, st.just("x")),
)
IGNORED = st.builds(DigitPressed, st.sampled_from(["A", "B", "C", "D", "a", "", "11"]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(HEARD_EVENTS, st.lists(IGNORED, max_size=2)), max_size=20),
    st.sampled_from(["sales", "service"]),
)
def test_ignored_keys_change_nothing_whenever_they_come(
    steps: list[tuple[object, list[DigitPressed]]], line_name: str
) -> None:
    """A call with keys that mean nothing sprinkled through it gives, event for event, the
    same commands, states and decision as the same call without them."""
    line = POLICY.line_named(line_name)
    assert line is not None
    plain = InboundFlow.for_line(line, POLICY)
    noisy = InboundFlow.for_line(line, POLICY)
    assert plain.handle(CallEntered(), NOW) == noisy.handle(CallEntered(), NOW)
    for event, ignored in steps:
        for key in ignored:
            before = noisy.state
            assert noisy.handle(key, NOW) == []
            assert noisy.state is before
        outcomes = []
        for flow in (plain, noisy):
            try:
                outcomes.append(flow.handle(event, NOW))
            except FlowError as error:
                outcomes.append([str(error)])
        assert outcomes[0] == outcomes[1]
        assert plain.state is noisy.state
        assert plain.decision is noisy.decision
