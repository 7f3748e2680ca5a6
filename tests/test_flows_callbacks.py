"""The callback flow: the same communication within the window, a new one outside it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.callbacks import CallbackFlow, State
from flows.commands import (
    CommitDecision,
    Continue,
    LookUpPriorCall,
    NoticeCallee,
    SkipRecording,
    StartRecording,
)
from flows.events import (
    CallbackPlaced,
    CallerHungUp,
    DecisionCommitted,
    NoPriorCall,
    PriorCallFound,
)
from flows.policy import Decision, LegalBasis, Policy

NOW = datetime(2026, 11, 25, 10, 40, tzinfo=UTC)
POLICY = Policy(overload_window=timedelta(hours=4))


def flow() -> CallbackFlow:
    line = POLICY.line_named("service")
    assert line is not None
    return CallbackFlow.for_line(line, POLICY)


def prior(basis: LegalBasis, decision: Decision, withdrawn: bool = False) -> PriorCallFound:
    line = "sales" if basis is LegalBasis.ZEKOM2_214_7 else "service"
    return PriorCallFound("m1", line, basis, decision, consent_withdrawn=withdrawn)


def test_lookup_uses_the_one_hour_window() -> None:
    """Without the overload switch the callback looks back one hour."""
    f = flow()
    assert f.handle(CallbackPlaced(overload=False), NOW) == [
        LookUpPriorCall(
            window=timedelta(hours=1),
            overload=False,
            since=NOW - timedelta(hours=1),
            legal_basis=LegalBasis.CONSENT,
        )
    ]


def test_a_sales_callback_looks_for_missed_sales_calls() -> None:
    """The look-up asks for missed calls of the callback's own legal basis only."""
    line = POLICY.line_named("sales")
    assert line is not None
    out = CallbackFlow.for_line(line, POLICY).handle(CallbackPlaced(overload=False), NOW)
    assert isinstance(out[0], LookUpPriorCall)
    assert out[0].legal_basis is LegalBasis.ZEKOM2_214_7


def test_overload_switch_widens_the_window() -> None:
    """With the operator's overload switch on, the configured overload window applies."""
    f = flow()
    out = f.handle(CallbackPlaced(overload=True), NOW)
    assert out == [
        LookUpPriorCall(
            window=timedelta(hours=4),
            overload=True,
            since=NOW - timedelta(hours=4),
            legal_basis=LegalBasis.CONSENT,
        )
    ]


@pytest.mark.parametrize(
    ("found", "decision", "recorded"),
    [
        (prior(LegalBasis.ZEKOM2_214_7, Decision.RECORD), Decision.RECORD, True),
        (prior(LegalBasis.CONSENT, Decision.RECORD), Decision.RECORD, True),
        (prior(LegalBasis.CONSENT, Decision.REFUSE), Decision.REFUSE, False),
        (prior(LegalBasis.CONSENT, Decision.NONE), Decision.REFUSE, False),
        (prior(LegalBasis.CONSENT, Decision.RECORD, withdrawn=True), Decision.REFUSE, False),
    ],
    ids=["sales", "consent-1", "consent-2", "consent-none", "consent-withdrawn"],
)
def test_same_communication_inherits_the_missed_call(
    found: PriorCallFound, decision: Decision, recorded: bool
) -> None:
    """A callback to a missed call is recorded silently or not at all, never prompted."""
    f = flow()
    f.handle(CallbackPlaced(overload=False), NOW)
    out = f.handle(found, NOW)
    assert len(out) == 1 and isinstance(out[0], CommitDecision)
    assert out[0].decision is decision
    assert out[0].linked_to == "m1" and out[0].prompt is None
    after = f.handle(DecisionCommitted(), NOW)
    assert (StartRecording() in after) is recorded
    assert not any(isinstance(c, NoticeCallee) for c in after)
    assert after[-1] == Continue()


def test_no_missed_call_means_the_customer_hears_the_notice() -> None:
    """Outside the window the callback is a new communication: the callee is told first."""
    f = flow()
    f.handle(CallbackPlaced(overload=False), NOW)
    out = f.handle(NoPriorCall(), NOW)
    assert isinstance(out[0], CommitDecision) and out[0].decision is Decision.NONE
    after = f.handle(DecisionCommitted(), NOW)
    assert [type(c) for c in after] == [SkipRecording, NoticeCallee, Continue]
    assert after[1] == NoticeCallee("service")


def test_hang_up_during_lookup_records_nothing() -> None:
    """The agent hangs up before the lookup answers: nothing starts afterwards."""
    f = flow()
    f.handle(CallbackPlaced(overload=False), NOW)
    assert f.handle(CallerHungUp(), NOW) == []
    assert f.handle(prior(LegalBasis.ZEKOM2_214_7, Decision.RECORD), NOW) == []
    assert f.state is State.HUNG_UP
