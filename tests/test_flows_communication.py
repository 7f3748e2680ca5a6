"""One communication: which missed call a callback answers, and what a withdrawal covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.communication import (
    MissedCandidate,
    communication_of,
    customer_of,
    look_up_answer,
    may_answer,
    prior_call,
)
from flows.events import NoPriorCall, PriorCallFound
from flows.policy import Decision, Direction, LegalBasis
from flows.withdrawal import (
    Coverage,
    Covered,
    WithdrawalScope,
    consent_withdrawn,
    coverage,
    deleted_for,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=1)
ALICE = "+38641111111"


def missed(
    call_id: str,
    minutes_ago: int,
    basis: LegalBasis = LegalBasis.CONSENT,
    decision: Decision = Decision.RECORD,
    answered: bool = False,
) -> MissedCandidate:
    ended = NOW - timedelta(minutes=minutes_ago)
    return MissedCandidate(
        call_id=call_id,
        line="sales" if basis is LegalBasis.ZEKOM2_214_7 else "service",
        legal_basis=basis,
        decision=decision,
        decided_at=ended - timedelta(minutes=2),
        ended_at=ended,
        answered_by_callback=answered,
    )


def test_the_customer_is_the_caller_inbound_and_the_dialled_party_otherwise() -> None:
    """Who the customer is, decided once for every direction."""
    assert customer_of(Direction.INBOUND, ALICE, "+38640404040") == ALICE
    assert customer_of(Direction.CALLBACK, "+38640404099", ALICE) == ALICE
    assert customer_of(Direction.CALLEE, ALICE, ALICE) == ALICE


def test_a_communication_is_named_by_the_call_it_began_with() -> None:
    """A linked callback joins the missed call's communication; a customer's leg its
    callback's; anything else begins its own."""
    assert communication_of("cb", "missed", None) == "missed"
    assert communication_of("leg", None, "cb") == "cb"
    assert communication_of("in", None, None) == "in"


def test_a_service_callback_passes_over_a_newer_missed_sales_call() -> None:
    """Case 1: service missed (2) then sales missed; each callback answers its own kind."""
    calls = [
        missed("service", 30, decision=Decision.REFUSE),
        missed("sales", 10, LegalBasis.ZEKOM2_214_7),
    ]
    service = prior_call(LegalBasis.CONSENT, calls, SINCE)
    sales = prior_call(LegalBasis.ZEKOM2_214_7, calls, SINCE)
    assert service is not None and service.call_id == "service"
    assert sales is not None and sales.call_id == "sales"


def test_an_unanswered_callback_leaves_the_missed_call_open() -> None:
    """Case 2: only an answered callback uses the missed call up."""
    assert prior_call(LegalBasis.CONSENT, [missed("m", 25)], SINCE) is not None
    assert prior_call(LegalBasis.CONSENT, [missed("m", 25, answered=True)], SINCE) is None


def test_the_window_is_inclusive_and_the_newest_wins() -> None:
    """A call that ended exactly at the window's start counts; of two, the newer."""
    at_edge = missed("edge", 60)
    assert may_answer(LegalBasis.CONSENT, at_edge, SINCE)
    assert not may_answer(LegalBasis.CONSENT, missed("old", 61), SINCE)
    chosen = prior_call(LegalBasis.CONSENT, [at_edge, missed("new", 5)], SINCE)
    assert chosen is not None and chosen.call_id == "new"


BASES = st.sampled_from(list(LegalBasis))
CANDIDATES = st.lists(
    st.builds(
        missed,
        call_id=st.text("abcdef0123", min_size=1, max_size=6),
        minutes_ago=st.integers(0, 200),
        basis=BASES,
        decision=st.sampled_from(list(Decision)),
        answered=st.booleans(),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(BASES, CANDIDATES)
def test_a_callback_never_links_across_line_kinds(
    basis: LegalBasis, candidates: list[MissedCandidate]
) -> None:
    """Whatever the ledger returns, a callback answers only an unanswered missed call of its
    own legal basis within the window, and the newest such one."""
    chosen = prior_call(basis, candidates, SINCE)
    eligible = [
        c
        for c in candidates
        if c.legal_basis is basis and c.ended_at >= SINCE and not c.answered_by_callback
    ]
    if not eligible:
        assert chosen is None
        return
    assert chosen is not None
    assert chosen.legal_basis is basis and not chosen.answered_by_callback
    assert chosen.ended_at == max(c.ended_at for c in eligible)


def scope(
    wid: str, minutes_ago: int, customer: str | None = None, communication: str | None = None
) -> WithdrawalScope:
    return WithdrawalScope(wid, NOW - timedelta(minutes=minutes_ago), customer, communication)


def item(basis: LegalBasis, minutes_ago: int, customer: str | None, comm: str) -> Covered:
    return Covered(basis, customer, comm, NOW - timedelta(minutes=minutes_ago))


def test_a_withdrawal_deletes_consent_and_keeps_sales_it_names() -> None:
    """By customer: their consent recordings go, their sales recordings are kept."""
    w = scope("w", 0, customer=ALICE)
    assert coverage(w, item(LegalBasis.CONSENT, 10, ALICE, "c1")) is Coverage.DELETE
    assert coverage(w, item(LegalBasis.ZEKOM2_214_7, 10, ALICE, "c2")) is Coverage.KEEP
    assert coverage(w, item(LegalBasis.CONSENT, 10, "+38641222222", "c3")) is Coverage.NONE


def test_a_withdrawal_of_one_communication_covers_only_it() -> None:
    """Case 4: a caller without a number withdraws one communication by its call."""
    w = scope("w", 0, communication="c1")
    assert coverage(w, item(LegalBasis.CONSENT, 10, None, "c1")) is Coverage.DELETE
    assert coverage(w, item(LegalBasis.CONSENT, 10, None, "c2")) is Coverage.NONE


def test_consent_given_after_a_withdrawal_is_a_new_consent() -> None:
    """A decision after the withdrawal's registration is not covered by it."""
    w = scope("w", 30, customer=ALICE)
    assert coverage(w, item(LegalBasis.CONSENT, 10, ALICE, "c")) is Coverage.NONE
    assert coverage(w, item(LegalBasis.CONSENT, 30, ALICE, "c")) is Coverage.DELETE


def test_a_recording_is_deleted_for_the_earliest_withdrawal() -> None:
    """Of two withdrawals that cover one recording, the earlier is credited."""
    early, late = scope("b", 20, customer=ALICE), scope("a", 5, communication="c")
    covered = item(LegalBasis.CONSENT, 30, ALICE, "c")
    assert deleted_for(covered, [late, early]) == early
    assert consent_withdrawn(covered, [late])
    assert not consent_withdrawn(covered, [])


def test_the_look_up_answer_carries_a_withdrawal_of_the_communication() -> None:
    """A withdrawal of the missed call's communication voids its consent for callbacks."""
    calls = [missed("m", 20)]
    answer = look_up_answer(
        LegalBasis.CONSENT, SINCE, ALICE, calls, [scope("w", 5, communication="m")]
    )
    assert isinstance(answer, PriorCallFound) and answer.consent_withdrawn
    answer = look_up_answer(LegalBasis.CONSENT, SINCE, ALICE, calls, [])
    assert isinstance(answer, PriorCallFound) and not answer.consent_withdrawn
    assert isinstance(look_up_answer(LegalBasis.ZEKOM2_214_7, SINCE, ALICE, calls, []), NoPriorCall)
